"""The user's documents as passages for the ``rag`` baseline: reading text, Markdown, HTML and PDF
files, and cutting them into chunks of paragraphs with overlap.

* ``.txt``: paragraphs are separated by blank lines;
* ``.md`` / ``.markdown``: the same, and each heading (``#`` .. ``######``) starts a section
  whose heading trail (``Citation rules > Courts``) goes with every chunk of it;
* ``.html`` / ``.htm``: the visible text (``html.parser`` of the standard library; no script,
  style or head), block elements (``p``, ``li``, ``tr`` ...) as paragraphs, ``h1``..``h6`` as
  headings like Markdown's;
* ``.pdf``: the text of each page (``pypdf``, the ``tuneforge[rag]`` extra), paragraphs by
  blank lines, the page number as the location.

:func:`chunk_paragraphs` packs the paragraphs of a section into chunks of at most
``size`` characters; a paragraph longer than that is cut at whitespace into pieces, each
repeating the last ``overlap`` characters of the one before, and a chunk that follows a full one
repeats its last ``overlap`` characters too, so a sentence cut at a boundary is whole in one of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterable, Optional

from tuneforge.errors import ConfigError, DataError

#: file suffix -> format
FORMATS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html",
           ".htm": "html", ".pdf": "pdf"}
PDF_EXTRA = "pip install 'tuneforge[rag]' (or pip install pypdf)"

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_BLANK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Paragraph:
    """One paragraph of a document: its text, where it starts (``line 12``, ``page 3``) and the
    trail of headings it sits under (empty for plain text)."""

    text: str
    location: str
    headings: tuple = ()


@dataclass(frozen=True)
class Chunk:
    """A passage of the corpus: the file it came from (relative to the corpus folder), where it
    starts, its heading trail and its text."""

    source: str
    location: str
    headings: tuple
    text: str

    def label(self) -> str:
        """``file:location`` and the heading trail, e.g. ``rules.md:line 12 (Citation rules > Courts)``."""
        trail = f" ({' > '.join(self.headings)})" if self.headings else ""
        return f"{self.source}:{self.location}{trail}"

    def searchable(self) -> str:
        """What a retriever indexes: the heading trail, then the text."""
        return "\n".join([*self.headings, self.text])


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def corpus_files(corpus, key: str = "corpus") -> list:
    """``[(path, name)]`` of the corpus: each file given, and every file of a known format under each
    folder given (sorted); ``name`` is the path relative to its folder (or the file's name).

    Raises :class:`ConfigError` for a missing path, a file given by name in an unknown format, or
    a corpus without any document.  Files of other formats inside a folder are not read
    (:func:`skipped_files` lists them, and the rag baseline says so).
    """
    found = []
    for entry in _entries(corpus):
        path = Path(entry).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
            found += [(p, str(p.relative_to(path))) for p in files if p.suffix.lower() in FORMATS]
        elif path.is_file():
            if path.suffix.lower() not in FORMATS:
                raise ConfigError(f"{key}: {path} is not a document format the rag baseline reads; valid: "
                                  f"{', '.join(sorted(FORMATS))}")
            found.append((path, path.name))
        else:
            raise ConfigError(f"{key}: no such file or folder: {path}")
    if not found:
        raise ConfigError(f"{key}: no document ({', '.join(sorted(FORMATS))}) in {', '.join(_entries(corpus))}")
    return found


def skipped_files(corpus) -> list:
    """Files inside the corpus folders that are not of a known format (they are not read)."""
    skipped = []
    for entry in _entries(corpus):
        path = Path(entry).expanduser()
        if path.is_dir():
            skipped += [str(p) for p in sorted(path.rglob("*")) if p.is_file() and not _hidden(p.relative_to(path))
                        and p.suffix.lower() not in FORMATS]
    return skipped


def _entries(corpus) -> list:
    if isinstance(corpus, (str, Path)):
        return [str(corpus)]
    return [str(entry) for entry in corpus or ()]


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def read_paragraphs(path: Path) -> list:
    """The :class:`Paragraph` s of one document, by its suffix (see the module docstring)."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind == "pdf":
        return pdf_paragraphs(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    if kind == "markdown":
        return markdown_paragraphs(text)
    if kind == "html":
        return html_paragraphs(text)
    return text_paragraphs(text)


def text_paragraphs(text: str, location: str = "line", first_line: int = 1, headings: tuple = ()) -> list:
    """Paragraphs separated by blank lines, each located by the line it starts on."""
    paragraphs = []
    line = first_line
    position = 0
    for match in list(_BLANK.finditer(text)) + [None]:
        end = match.start() if match else len(text)
        block = text[position:end]
        stripped = block.strip()
        if stripped:
            start_line = line + text.count("\n", position, position + block.index(stripped[0]))
            paragraphs.append(Paragraph(_one_line(stripped), f"{location} {start_line}" if location == "line"
                                        else location, headings))
        if match is None:
            break
        line += text.count("\n", position, match.end())
        position = match.end()
    return paragraphs


_LINE_ITEM = re.compile(r"^\s*(?:[-*+]\s|\d+[.)]\s|\|)")


def _one_line(text: str) -> str:
    """A paragraph's lines joined by single spaces (hard-wrapped text reads as one paragraph), except
    that list items and table rows (``- ``, ``* ``, ``1. ``, ``|``) keep their own lines."""
    lines = []
    for line in text.splitlines():
        words = " ".join(line.split())
        if not words:
            continue
        if lines and not _LINE_ITEM.match(line):
            lines[-1] = f"{lines[-1]} {words}"
        else:
            lines.append(words)
    return "\n".join(lines)


def markdown_paragraphs(text: str) -> list:
    """Paragraphs of Markdown: the heading lines start sections (their text is kept as the trail
    of every paragraph under them); code fences are kept as they are."""
    paragraphs: list = []
    trail: list = []  # (level, heading) of the headings the current section sits under
    section: list = []
    section_line = 1
    in_fence = False

    def flush():
        if section:
            paragraphs.extend(text_paragraphs("\n".join(section), first_line=section_line,
                                              headings=tuple(title for _level, title in trail)))

    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith(("```", "~~~")):
            in_fence = not in_fence
        heading = None if in_fence else _HEADING.match(line)
        if heading is None:
            if not section:
                section_line = number
            section.append(line)
            continue
        flush()
        section = []
        level = len(heading.group(1))
        trail = [(lvl, title) for lvl, title in trail if lvl < level] + [(level, heading.group(2))]
        section_line = number + 1
    flush()
    return paragraphs


class _TextOfHtml(HTMLParser):
    """Collects the visible text of an HTML page as Markdown-like lines: headings as ``#`` lines,
    block elements as paragraphs."""

    BLOCKS = {"p", "div", "li", "ul", "ol", "tr", "table", "section", "article", "blockquote", "pre", "br",
              "dd", "dt", "dl", "figcaption", "header", "footer", "main", "nav", "aside", "hr", "form", "caption"}
    HIDDEN = {"script", "style", "head", "title", "noscript", "template", "svg"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self.hidden += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.parts.append(f"\n\n{'#' * int(tag[1])} ")
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")
        elif tag in ("td", "th"):
            self.parts.append(" | ")

    def handle_endtag(self, tag):
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif re.fullmatch(r"h[1-6]", tag) or tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_startendtag(self, tag, attrs):
        if tag in ("br", "hr"):
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data.replace("\n", " "))


def html_paragraphs(text: str) -> list:
    """Paragraphs of an HTML page's visible text, sections by ``h1``..``h6``; located by the number
    of the paragraph (``paragraph 3``), as HTML lines say little."""
    parser = _TextOfHtml()
    parser.feed(text)
    parser.close()
    lines = []
    for block in _BLANK.split("".join(parser.parts)):
        block = " ".join(block.split())
        if block.startswith("#"):
            marks, _, title = block.partition(" ")
            lines.append(f"{marks} {title.strip(' |')}" if title.strip(" |") else "")
        elif block.strip(" |"):
            lines.append(block.strip(" |"))
    paragraphs = markdown_paragraphs("\n\n".join(line for line in lines if line))
    return [Paragraph(p.text, f"paragraph {i}", p.headings) for i, p in enumerate(paragraphs, start=1)]


def pdf_paragraphs(path: Path) -> list:
    """Paragraphs of each page's text (``pypdf``), located by page."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise ConfigError(f"{path}: reading PDF documents needs pypdf: {PDF_EXTRA}") from None
    try:
        reader = PdfReader(str(path))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise DataError(f"{path}: not a readable PDF ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") \
            from None
    paragraphs = []
    for number, text in enumerate(pages, start=1):
        paragraphs += text_paragraphs(text, location=f"page {number}")
    return paragraphs


# ---------------------------------------------------------------------------
# Chunks
# ---------------------------------------------------------------------------


def split_text(text: str, size: int, overlap: int) -> list:
    """``text`` in pieces of at most ``size`` characters, cut at whitespace where there is any in
    the second half of a piece; each piece after the first starts up to ``overlap`` characters
    (at a word start) before the previous one ended."""
    text = text.strip()
    pieces = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind(" ", start + size // 2, end + 1)
            end = cut if cut > start else end
        pieces.append(text[start:end].strip())
        if end >= len(text):
            break
        next_start = max(end - overlap, start + 1)
        if overlap and next_start < end:  # begin at a word start inside the overlap
            space = text.find(" ", next_start - 1, end)
            next_start = space + 1 if 0 <= space < end - 1 else next_start
        start = next_start if overlap else end
        while start < len(text) and text[start] == " ":
            start += 1
    return [piece for piece in pieces if piece]


def _tail(text: str, overlap: int) -> str:
    """The last ``overlap`` characters of ``text``, starting at a word."""
    if overlap <= 0 or not text:
        return ""
    if len(text) <= overlap:
        return text
    tail = text[-overlap:]
    space = tail.find(" ")
    return tail[space + 1:] if 0 <= space < len(tail) - 1 else tail


def chunk_paragraphs(paragraphs: Iterable[Paragraph], size: int, overlap: int, source: str = "") -> list:
    """The :class:`Chunk` s of one document: consecutive paragraphs of the same section packed into
    chunks of at most ``size`` characters (a paragraph longer than that alone, in pieces, see
    :func:`split_text`); a chunk that follows a full one of the same section starts with that one's
    last ``overlap`` characters when they fit."""
    chunks: list = []
    current: list = []
    current_start: Optional[Paragraph] = None

    def flush():
        if current:
            chunks.append(Chunk(source, current_start.location, current_start.headings, "\n\n".join(current)))

    for paragraph in paragraphs:
        if current and paragraph.headings != current_start.headings:
            flush()
            current, current_start = [], None
        if len(paragraph.text) > size:
            flush()
            current, current_start = [], None
            for piece in split_text(paragraph.text, size, overlap):
                chunks.append(Chunk(source, paragraph.location, paragraph.headings, piece))
            continue
        if current and len("\n\n".join([*current, paragraph.text])) > size:
            previous = "\n\n".join(current)
            flush()
            tail = _tail(previous, overlap)
            fits = tail and len(tail) + 2 + len(paragraph.text) <= size
            current, current_start = ([tail] if fits else []), paragraph
        if current_start is None:
            current_start = paragraph
        current.append(paragraph.text)
    flush()
    return chunks


def read_corpus(corpus, size: int, overlap: int, key: str = "corpus") -> tuple:
    """``(chunks, documents)``: every document of the corpus (:func:`corpus_files`) read and chunked,
    and ``{name: its whole text}`` (for the leak check, which must not miss a string cut at a chunk
    boundary)."""
    chunks, documents = [], {}
    for path, name in corpus_files(corpus, key):
        paragraphs = read_paragraphs(path)
        headings = dict.fromkeys(h for p in paragraphs for h in p.headings)
        documents[name] = "\n\n".join([*headings, *(p.text for p in paragraphs)])
        chunks += chunk_paragraphs(paragraphs, size, overlap, source=name)
    return chunks, documents
