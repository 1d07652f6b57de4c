"""Evaluation reports for the explorer, read-only: the folders the evaluation harness writes (``results.md`` or
``report.md`` with PNG/SVG plots next to it) under one configured directory (``ServiceConfig.reports_dir``).

Every name and path a client sends is checked before it touches the disk: relative, ``/``-separated, no empty,
``.``, ``..`` or hidden (``.x``) parts, no backslashes or control characters, and the resolved path (symlinks
followed) must stay inside the reports directory. Only image files are served, and a report's Markdown is rendered by
:func:`render_markdown`, a small renderer that escapes all text and emits only the tags it writes itself.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPORT_FILES: tuple[str, ...] = ("report.md", "results.md", "README.md")
IMAGE_TYPES: dict[str, str] = {
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
MAX_DEPTH = 4
MAX_REPORTS = 500
MAX_MARKDOWN_BYTES = 4 << 20
MAX_IMAGE_BYTES = 32 << 20
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


class ReportNotFound(LookupError):
    """No such report or file (including every refused name: the caller cannot tell the two apart)."""


@dataclass(frozen=True)
class ReportInfo:
    name: str  # the folder relative to the reports directory ("." for the directory itself)
    title: str
    markdown: str  # the Markdown file's name
    images: tuple[str, ...]
    modified: float


def _parts(name: str) -> list[str]:
    """The checked parts of a client-supplied relative path; :class:`ReportNotFound` if any is unsafe."""
    if not isinstance(name, str) or not name or len(name) > 1000 or _BAD_CHARS.search(name) or name.startswith("/"):
        raise ReportNotFound(name)
    parts = name.split("/")
    for part in parts:
        if not part or part in (".", "..") or part.startswith("."):
            raise ReportNotFound(name)
    return parts


def _title(markdown: str, fallback: str) -> str:
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and m.group(1):
            return m.group(1)
    return fallback


class ReportLibrary:
    """The report folders under ``root`` (searched ``MAX_DEPTH`` levels deep; hidden folders skipped)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    # -- paths

    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if resolved != self.root and not resolved.is_relative_to(self.root):
            raise ReportNotFound(str(path))
        return resolved

    def folder(self, name: str) -> Path:
        """The report folder called ``name`` (checked; it must hold a report file)."""
        path = self.root if name == "." else self._inside(self.root.joinpath(*_parts(name)))
        if not path.is_dir() or self._markdown_file(path) is None:
            raise ReportNotFound(name)
        return path

    @staticmethod
    def _markdown_file(folder: Path) -> Path | None:
        for candidate in REPORT_FILES:
            path = folder / candidate
            if path.is_file():
                return path
        return None

    def _images(self, folder: Path) -> tuple[str, ...]:
        out = []
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return ()
        for entry in entries:
            if entry.name.startswith(".") or Path(entry.name).suffix.lower() not in IMAGE_TYPES:
                continue
            try:
                self._inside(Path(entry.path))
            except ReportNotFound:
                continue
            if entry.is_file():
                out.append(entry.name)
        return tuple(out)

    def _info(self, folder: Path, markdown: Path) -> ReportInfo:
        name = "." if folder == self.root else folder.relative_to(self.root).as_posix()
        try:
            with markdown.open("r", encoding="utf-8", errors="replace") as f:
                head = f.read(64 << 10)
            modified = markdown.stat().st_mtime
        except OSError:
            head, modified = "", 0.0
        return ReportInfo(name, _title(head, name), markdown.name, self._images(folder), modified)

    # -- listing and reading

    def list(self) -> list[ReportInfo]:
        """Every report folder, by name."""
        if not self.root.is_dir():
            return []
        found: list[ReportInfo] = []
        for dirpath, dirnames, _files in os.walk(self.root, followlinks=False):
            folder = Path(dirpath)
            depth = len(folder.relative_to(self.root).parts)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < MAX_DEPTH else []
            markdown = self._markdown_file(folder)
            if markdown is not None:
                found.append(self._info(folder, markdown))
                if len(found) >= MAX_REPORTS:
                    break
        return sorted(found, key=lambda r: r.name)

    def read(self, name: str) -> tuple[ReportInfo, str]:
        """The report's info and its Markdown rendered to safe HTML (images become ``data-report-file`` tags)."""
        folder = self.folder(name)
        markdown = self._markdown_file(folder)
        assert markdown is not None
        self._inside(markdown)
        info = self._info(folder, markdown)
        try:
            with markdown.open("rb") as f:
                text = f.read(MAX_MARKDOWN_BYTES).decode("utf-8", errors="replace")
        except OSError as exc:
            raise ReportNotFound(name) from exc

        def image(ref: str) -> str | None:
            while ref.startswith("./"):
                ref = ref[2:]
            try:
                self.file(name, ref)
            except ReportNotFound:
                return None
            return ref

        return info, render_markdown(text, resolve_image=image)

    def file(self, name: str, path: str) -> tuple[Path, str]:
        """An image of the report (``path`` relative to its folder): the file and its content type."""
        folder = self.folder(name)
        target = self._inside(folder.joinpath(*_parts(path)))
        if not target.is_relative_to(folder):
            raise ReportNotFound(path)
        content_type = IMAGE_TYPES.get(target.suffix.lower())
        if content_type is None or not target.is_file():
            raise ReportNotFound(path)
        try:
            if target.stat().st_size > MAX_IMAGE_BYTES:
                raise ReportNotFound(path)
        except OSError as exc:
            raise ReportNotFound(path) from exc
        return target, content_type


# ---------------------------------------------------------------- Markdown

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_TABLE_SEP = re.compile(r"^\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?$")
_RULE = re.compile(r"^(-{3,}|\*{3,}|_{3,})$")
_BULLET = re.compile(r"^(\s*)([-*+])\s+(.*)$")
_ORDERED = re.compile(r"^(\s*)(\d{1,9})[.)]\s+(.*)$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_INLINE = re.compile(
    r"\\(?P<esc>[\\`*_{}\[\]()#+\-.!|<>~])"
    r"|(?P<ticks>`+)(?P<code>.+?)(?P=ticks)"
    r"|!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)(?:\s+\"[^\"]*\")?\)"
    r"|\[(?P<label>[^\]]+)\]\((?P<href>[^)\s]+)(?:\s+\"[^\"]*\")?\)"
    r"|\*\*(?P<strong>.+?)\*\*"
    r"|__(?P<strong2>.+?)__"
    r"|(?<![\w*])\*(?P<em>[^*\s](?:[^*]*[^*\s])?)\*(?![\w*])"
    r"|(?<![\w_])_(?P<em2>[^_\s](?:[^_]*[^_\s])?)_(?![\w_])"
    r"|<(?P<auto>https?://[^>\s]+)>"
)
_SAFE_HREF = re.compile(r"^https?://[^\s\"'<>]+$", re.IGNORECASE)


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def render_inline(text: str, resolve_image: Callable[[str], str | None] | None = None) -> str:
    """Inline Markdown (code, images, links, bold, italics, escapes) to HTML; all other text is escaped."""
    out: list[str] = []
    pos = 0
    for m in _INLINE.finditer(text):
        out.append(_e(text[pos : m.start()]))
        pos = m.end()
        if m.group("esc") is not None:
            out.append(_e(m.group("esc")))
        elif m.group("code") is not None:
            out.append(f"<code>{_e(m.group('code').strip())}</code>")
        elif m.group("src") is not None:
            alt = m.group("alt")
            ref = resolve_image(m.group("src")) if resolve_image is not None else None
            if ref is None:
                out.append(f'<span class="missing-image">[image: {_e(alt or m.group("src"))}]</span>')
            else:
                out.append(f'<img class="report-img" alt="{_e(alt)}" data-report-file="{_e(ref)}">')
        elif m.group("label") is not None:
            label = render_inline(m.group("label"), resolve_image)
            href = m.group("href")
            if _SAFE_HREF.match(href):
                out.append(f'<a href="{_e(href)}" rel="noopener noreferrer" target="_blank">{label}</a>')
            else:
                out.append(f'<span class="link">{label}</span>')
        elif m.group("strong") is not None or m.group("strong2") is not None:
            inner = m.group("strong") if m.group("strong") is not None else m.group("strong2")
            out.append(f"<strong>{render_inline(inner, resolve_image)}</strong>")
        elif m.group("em") is not None or m.group("em2") is not None:
            inner = m.group("em") if m.group("em") is not None else m.group("em2")
            out.append(f"<em>{render_inline(inner, resolve_image)}</em>")
        elif m.group("auto") is not None:
            url = m.group("auto")
            out.append(f'<a href="{_e(url)}" rel="noopener noreferrer" target="_blank">{_e(url)}</a>')
    out.append(_e(text[pos:]))
    return "".join(out)


def _cells(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    return [c.strip() for c in _CELL_SPLIT.split(s)]


def _align(spec: str) -> str:
    spec = spec.strip()
    if spec.startswith(":") and spec.endswith(":"):
        return ' class="al-c"'
    if spec.endswith(":"):
        return ' class="al-r"'
    if spec.startswith(":"):
        return ' class="al-l"'
    return ""


def render_markdown(text: str, *, resolve_image: Callable[[str], str | None] | None = None) -> str:
    """Markdown to HTML for the report view: headings, paragraphs, pipe tables (with column alignment), bullet and
    numbered lists, fenced and indented code, block quotes, rules and the inline forms of :func:`render_inline`.
    Raw HTML in the Markdown is shown as text. ``resolve_image(src)`` returns the report file an image refers to,
    or None (the image is then shown as its alt text)."""

    def inline(s: str) -> str:
        return render_inline(s, resolve_image)

    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append("<p>" + inline(" ".join(para)) + "</p>")
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        s = line.strip()
        if s.startswith("```") or s.startswith("~~~"):
            flush()
            fence = s[:3]
            code: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence):
                code.append(lines[i])
                i += 1
            i += 1
            out.append("<pre><code>" + _e("\n".join(code)) + "</code></pre>")
            continue
        if not s:
            flush()
            i += 1
            continue
        if line.startswith("    ") and not para:
            code = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                code.append(lines[i][4:])
                i += 1
            while code and not code[-1].strip():
                code.pop()
            out.append("<pre><code>" + _e("\n".join(code)) + "</code></pre>")
            continue
        heading = _HEADING.match(s)
        if heading:
            flush()
            level = len(heading.group(1))
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
            i += 1
            continue
        if "|" in s and i + 1 < len(lines) and _TABLE_SEP.match(lines[i + 1].strip()) and "-" in lines[i + 1]:
            flush()
            header = _cells(s)
            aligns = [_align(a) for a in _cells(lines[i + 1])]
            aligns += [""] * max(0, len(header) - len(aligns))
            rows_html = []
            i += 2
            while i < len(lines) and lines[i].strip() and "|" in lines[i]:
                cells = _cells(lines[i])
                cells += [""] * max(0, len(header) - len(cells))
                rows_html.append(
                    "<tr>"
                    + "".join(f"<td{aligns[j]}>{inline(c)}</td>" for j, c in enumerate(cells[: len(header)]))
                    + "</tr>"
                )
                i += 1
            head = "".join(f"<th{aligns[j]}>{inline(c)}</th>" for j, c in enumerate(header))
            out.append(
                '<div class="table-wrap"><table><thead><tr>'
                + head
                + "</tr></thead><tbody>"
                + "".join(rows_html)
                + "</tbody></table></div>"
            )
            continue
        if _RULE.match(s.replace(" ", "")):
            flush()
            out.append("<hr>")
            i += 1
            continue
        if s.startswith(">"):
            flush()
            quoted = []
            while i < len(lines) and lines[i].strip().startswith(">"):
                quoted.append(lines[i].strip()[1:].removeprefix(" "))
                i += 1
            out.append(
                "<blockquote>" + render_markdown("\n".join(quoted), resolve_image=resolve_image) + "</blockquote>"
            )
            continue
        bullet, ordered = _BULLET.match(line), _ORDERED.match(line)
        if (bullet or ordered) and not para:
            tag = "ul" if bullet else "ol"
            pattern = _BULLET if bullet else _ORDERED
            items: list[str] = []
            while i < len(lines):
                current = lines[i]
                m = pattern.match(current)
                if m:
                    items.append(m.group(3).strip())
                elif current.strip() and items and current.startswith((" ", "\t")):
                    items[-1] += " " + current.strip()
                else:
                    break
                i += 1
            out.append(f"<{tag}>" + "".join(f"<li>{inline(item)}</li>" for item in items) + f"</{tag}>")
            continue
        para.append(s)
        i += 1
    flush()
    return "\n".join(out)


__all__ = ["ReportInfo", "ReportLibrary", "ReportNotFound", "render_inline", "render_markdown"]
