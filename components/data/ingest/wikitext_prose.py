"""Wikitext → clean prose paragraphs and the page's categories. Pure Python; no Ray, no parser tree.

The hot loop of Wikipedia ingestion, so it is a fixed sequence of passes over
the text, each a compiled regular expression or one linear scan, rather than
a full wikitext parse (mwparserfromhell's ``strip_code`` builds a node tree
and runs at a few pages per second on long articles). In order:

1. comments, and elements whose content is not prose (``<ref>``, ``<math>``,
   ``<gallery>``, ``<syntaxhighlight>``, ``<timeline>``, ...), with their content;
2. templates ``{{...}}`` and tables ``{|...|}``, nested in any mix, by one scan
   that keeps a stack of open brackets (an opener never closed is kept as text,
   as MediaWiki shows it); a few inline templates whose output is prose are
   rendered instead (``{{convert|5|km}}`` → "5 km", ``{{lang|fr|texte}}`` →
   "texte", ``{{nowrap|...}}``), since dropping them leaves holes in sentences;
3. external links ``[URL label]`` → label; internal links, innermost first:
   ``[[target|label]]trail`` → label + trail, ``[[target]]`` → target; file and
   image links, interlanguage links and category links removed (category names
   are collected first);
4. bold and italic quotes, remaining HTML tags, magic words, entities;
5. lines: headings end a paragraph and are not kept, sections that are lists of
   references or links (References, External links, See also, ...) are dropped,
   each list item is a paragraph of its own, table residue lines are dropped.

``Prose.paragraphs`` are whitespace-normalised and never empty; sentence
splitting is ``sentences.py``'s.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

# Elements whose content is never prose. ``<nowiki>``, ``<span>``, ``<small>``... keep their content.
_DROPPED_ELEMENTS = ("ref", "math", "chem", "ce", "gallery", "timeline", "syntaxhighlight", "source", "pre",
                     "score", "hiero", "imagemap", "graph", "mapframe", "maplink", "templatedata", "templatestyles",
                     "references", "poem", "code", "inputbox", "categorytree", "noinclude", "includeonly")
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_ELEMENT = re.compile(r"<(%s)\b[^>]*?(?:/>|>.*?</\1\s*>)" % "|".join(_DROPPED_ELEMENTS), re.S | re.I)
_UNCLOSED_REF = re.compile(r"<ref\b[^>/]*>[^<]*", re.I)  # a <ref> never closed: up to the next tag
# Template and table brackets. Tables open and close at the start of a line (after indentation), as MediaWiki
# parses them, so ``{{x|}}`` is never read as a table end.
_BRACKET = re.compile(r"\{\{|\}\}|^[ \t:]*\{\||^[ \t]*\|\}", re.M)
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:|mailto:|//)[^\s\]]*[ \t]*([^\]\n]*)\]", re.I)
# Innermost links: no "[[" or "]]" inside, single brackets allowed (captions say "[above]", even just before "]]").
_INNER_LINK = re.compile(r"\[\[([^\[\]]*(?:(?:\[(?!\[)|\](?!\])|\](?=\]\]))[^\[\]]*)*)\]\]([a-z]*)")
_INTERLANGUAGE = re.compile(r"^(?:[a-z]{2,3}(?:-[a-z0-9]+)*|simple)$")
_QUOTES = re.compile(r"'{2,}")
_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*\b[^<>]*>")
_BREAK = re.compile(r"<br\s*/?>", re.I)
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")
_LIST_MARKER = re.compile(r"^[*#:;]+\s*")
_SPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCTUATION = re.compile(r" ([,.;:!?)\]])")
_EMPTY_PARENTHESES = re.compile(r"\(\s*[,;:.–—-]*\s*\)|\[\s*\]")
_OPEN_PARENTHESIS_SPACE = re.compile(r"\( ([,;:]\s*)?")
_REPEATED_PUNCTUATION = re.compile(r"([,;:])(?:\s*[,;:])+")
_LETTER = re.compile(r"[^\W\d_]")
_LEADING_PUNCTUATION = re.compile(r"^[,.;:)\]]+\s*")  # what is left of a definition list or a removed template

# Section titles (lower case) whose content is lists of sources or links, not prose.
NON_PROSE_SECTIONS = frozenset({
    "references", "notes", "footnotes", "citations", "sources", "bibliography", "external links", "see also",
    "further reading", "notes and references", "references and notes", "works cited", "selected bibliography",
    "primary sources", "secondary sources", "general references", "explanatory notes", "other",
})
# Namespace names every MediaWiki understands, whatever the wiki's language.
CANONICAL_FILE_NAMES = ("file", "image", "media")
CANONICAL_CATEGORY_NAMES = ("category",)


@dataclass
class Prose:
    paragraphs: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)


def _namespace_key(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


# Inline templates whose text is prose (a template is otherwise removed): name → the positional argument shown.
_SHOWN_ARGUMENT = {"lang": 1, "nowrap": 0, "nobr": 0, "nobreak": 0, "sic": 0, "not a typo": 0, "abbr": 0,
                   "small": 0, "em": 0, "strong": 0, "mvar": 0, "var": 0, "as written": 0}
_CONVERT = frozenset({"convert", "cvt"})
_ARGUMENT_BAR = re.compile(r"\|(?![^\[]*\]\])")  # a "|" that is not inside a [[link|label]]
_RANGE_WORDS = frozenset({"-", "–", "to", "and", "or", "by", "x", "×", "+", "to(-)"})
_UNITS = {"sqmi": "sq mi", "sqft": "sq ft", "sqkm": "km²", "km2": "km²", "m2": "m²", "cuft": "cu ft", "m3": "m³",
          "mph": "mph", "kph": "km/h", "kmh": "km/h", "c": "°C", "f": "°F"}


def _unit(unit: str) -> str:
    for prefix, word in (("e3", "thousand "), ("e6", "million "), ("e9", "billion ")):
        if unit.startswith(prefix):
            return word + _UNITS.get(unit[2:].lower(), unit[2:])
    return _UNITS.get(unit.lower(), unit)


def _render_inline(body: str) -> str:
    """What an inline template without nested templates shows as prose: ``{{convert|5|km}}`` → "5 km",
    ``{{lang|fr|texte}}`` → "texte"; every other template → ""."""
    name, _, rest = body.partition("|")
    name = name.replace("_", " ").strip().lower()
    if name.startswith("lang-"):
        name = "nowrap"
    if name not in _SHOWN_ARGUMENT and name not in _CONVERT:
        return ""
    args = [a.strip() for a in _ARGUMENT_BAR.split(rest) if "=" not in a] if rest else []
    if name in _CONVERT:
        if len(args) >= 4 and args[1] in _RANGE_WORDS:
            return f"{args[0]} {args[1]} {args[2]} {_unit(args[3])}"
        return f"{args[0]} {_unit(args[1])}" if len(args) >= 2 else ""
    position = _SHOWN_ARGUMENT[name]
    return args[position] if len(args) > position else ""


def _strip_brackets(text: str) -> str:
    """Remove templates and tables, nested in any mix (an inline template of prose is rendered, see
    ``_render_inline``); an opener never closed stays as text."""
    if "{" not in text:
        return text
    out: list[str] = []
    kept_from = 0  # text before this position (outside any bracket) is still to be copied
    stack: list[tuple[str, int]] = []  # (kind, position of the opener)
    nested = False  # the outermost bracket holds others
    position = 0
    while True:
        for match in _BRACKET.finditer(text, position):
            token = match.group().strip(" \t:")
            if token in ("{{", "{|"):
                if not stack:
                    out.append(text[kept_from:match.start()])
                    kept_from, nested = match.start(), False
                else:
                    nested = True
                stack.append((token, match.start()))
            elif stack and (token == "}}") == (stack[-1][0] == "{{"):
                kind, opened = stack.pop()
                if not stack:
                    if kind == "{{" and not nested:
                        out.append(_render_inline(text[opened + 2:match.start()]))
                    kept_from = match.end()
            elif not stack and token == "}}":  # a stray closer
                out.append(text[kept_from:match.start()])
                kept_from = match.end()
        if not stack:
            out.append(text[kept_from:])
            return "".join(out)
        # The outermost opener was never closed: it is text, and scanning resumes right after it.
        _, opened = stack[0]
        stack.clear()
        position = opened + 2
        out.append(text[kept_from:position])
        kept_from = position


@dataclass(frozen=True)
class WikitextCleaner:
    """Turns one page's wikitext into ``Prose``. ``file_names`` and ``category_names`` are the wiki's names
    (and aliases) for the File and Category namespaces, lower case; the canonical English ones always apply."""

    file_names: frozenset[str] = frozenset(CANONICAL_FILE_NAMES)
    category_names: frozenset[str] = frozenset(CANONICAL_CATEGORY_NAMES)
    drop_sections: frozenset[str] = NON_PROSE_SECTIONS

    def clean(self, wikitext: str) -> Prose:
        categories: list[str] = []
        text = _COMMENT.sub("", wikitext)
        text = _ELEMENT.sub("", text)
        text = _UNCLOSED_REF.sub("", text)
        text = _strip_brackets(text)
        text = _EXTERNAL_LINK.sub(r"\1", text)
        text = self._replace_links(text, categories)
        text = _QUOTES.sub("", text)
        text = _BREAK.sub(" ", text)
        text = _TAG.sub("", text)
        text = _MAGIC_WORD.sub("", text)
        return Prose(self._paragraphs(text), list(dict.fromkeys(categories)))

    def _replace_links(self, text: str, categories: list[str]) -> str:
        def link(match: re.Match) -> str:
            target, _, label = match.group(1).partition("|")
            trail = match.group(2)
            if target.startswith(":"):  # [[:Category:X]] is a visible link, not a category
                target = target[1:]
            elif ":" in target:
                prefix, _, rest = target.partition(":")
                key = _namespace_key(prefix)
                if key in self.category_names:
                    name = " ".join(rest.replace("_", " ").split())
                    if name:
                        categories.append(name[0].upper() + name[1:])
                    return ""
                if key in self.file_names or _INTERLANGUAGE.match(key):
                    return ""
            if not label:
                label = target if not match.group(1).endswith("|") else target.split(" (")[0].split(",")[0]
            return label.replace("|", " ") + trail

        for _ in range(4):  # links nest in file captions; each pass replaces the innermost
            if "[[" not in text:
                break
            text = _INNER_LINK.sub(link, text)
        return text.replace("[[", "").replace("]]", "")

    def _paragraphs(self, text: str) -> list[str]:
        paragraphs: list[str] = []
        current: list[str] = []
        skip_level = 0  # inside a dropped section of this heading level (0: not)

        def flush() -> None:
            if current:
                paragraph = _tidy(" ".join(current))
                if paragraph:
                    paragraphs.append(paragraph)
                current.clear()

        for line in text.split("\n"):
            line = line.strip()
            if not line:
                flush()
                continue
            if line[0] == "=":
                heading = _HEADING.match(line)
                if heading:
                    flush()
                    level = len(heading.group(1))
                    if skip_level and level > skip_level:
                        continue
                    title = _namespace_key(heading.group(2)).strip(" :")
                    skip_level = level if title in self.drop_sections else 0
                    continue
            if skip_level:
                continue
            first = line[0]
            if first in "*#:;":
                flush()
                current.append(_LIST_MARKER.sub("", line))
                flush()
            elif first in "|!" or line.startswith("----") or line.startswith("{|"):
                flush()  # what is left of a table or a rule
            else:
                current.append(line)
        flush()
        return paragraphs


def _tidy(paragraph: str) -> str:
    """Entities decoded, spacing normalised, the debris of removed markup ("( ; )", " ,") cleared."""
    if "&" in paragraph:
        paragraph = html.unescape(paragraph)
    paragraph = _SPACE.sub(" ", paragraph).strip()
    if "(" in paragraph or "[" in paragraph:
        paragraph = _EMPTY_PARENTHESES.sub("", paragraph)
        paragraph = _OPEN_PARENTHESIS_SPACE.sub("(", paragraph)
    paragraph = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", paragraph)
    paragraph = _REPEATED_PUNCTUATION.sub(r"\1", paragraph)
    paragraph = _LEADING_PUNCTUATION.sub("", _SPACE.sub(" ", paragraph).strip())
    return paragraph if _LETTER.search(paragraph) else ""


def build_cleaner(file_names: list[str], category_names: list[str]) -> WikitextCleaner:
    """A cleaner for a wiki whose File and Category namespaces (and aliases) have these names."""
    return WikitextCleaner(frozenset(CANONICAL_FILE_NAMES) | {_namespace_key(n) for n in file_names},
                           frozenset(CANONICAL_CATEGORY_NAMES) | {_namespace_key(n) for n in category_names})
