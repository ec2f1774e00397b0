"""``report.md`` and a self-contained ``report.html`` (PNGs embedded as base64) from one list of blocks
(:func:`tuneforge.evaluation.report_blocks.build_blocks`)."""

from __future__ import annotations

import base64
import html
from pathlib import Path


def _md_cell(value) -> str:
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("\n", "<br>")


def render_markdown(blocks: list) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}\n")
        elif kind == "h2":
            out.append(f"## {block[1]}\n")
        elif kind == "p":
            out.append(f"{block[1]}\n")
        elif kind == "verdict":
            out.append("## Verdict\n")
            out.append(f"**{block[1]}**\n")
            if block[2]:
                out.append(f"{block[2]}\n")
        elif kind == "ul":
            out.append("".join(f"- {_md_cell(item)}\n" for item in block[1]))
        elif kind == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |",
                     "|" + "|".join(" --- " for _ in header) + "|"]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines) + "\n")
        elif kind == "img":
            out.append(f"![{block[2]}]({Path(block[1]).name})\n")
        elif kind == "pre":
            out.append(f"```yaml\n{block[1].rstrip()}\n```\n")
    return "\n".join(out)


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.3em .6em;"
          "text-align:left;vertical-align:top;font-size:.9em}th{background:#f3f3f3}"
          "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:.85em}img{max-width:100%}"
          "h1{font-size:1.5em}#verdict{border-left:4px solid #2a7;background:#f4fbf7;padding:.2em 1em;margin:1em 0}"
          "#verdict h2{margin:.4em 0;font-size:1.1em}.headline{font-size:1.2em;font-weight:600}")


def render_html(blocks: list) -> str:
    esc = html.escape
    title = next((b[1] for b in blocks if b[0] == "h1"), "tuneforge report")
    out = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>"
           f"<style>{_STYLE}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{esc(str(block[1]))}</{kind}>")
        elif kind == "verdict":
            paragraph = f"<p>{esc(str(block[2]))}</p>" if block[2] else ""
            out.append(f"<section id='verdict'><h2>Verdict</h2><p class='headline'>{esc(str(block[1]))}</p>"
                       f"{paragraph}</section>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{esc(str(item))}</li>" for item in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{esc(str(h))}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(Path(block[1]).read_bytes()).decode("ascii")
            out.append(f"<p><img alt='{esc(block[2])}' src='data:image/png;base64,{data}'></p>")
        elif kind == "pre":
            out.append(f"<pre>{esc(block[1])}</pre>")
    out.append("</body></html>\n")
    return "\n".join(out)
