"""Text labels around image grids (X/Y/Z plot, Prompt matrix): A1111's ``GridAnnotation``,
``draw_grid_annotations`` and ``draw_prompt_matrix``, re-exported by ``modules.images``."""
from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont


@dataclass
class GridAnnotation:
    """One label; an inactive one is drawn greyed out and struck through (a prompt-matrix part left out)."""
    text: str = ""
    is_active: bool = True


def get_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The font of the ``font`` setting (a .ttf/.otf path), else Pillow's bundled scalable font."""
    from modules.shared import opts

    path = getattr(opts, "font", "") or ""
    if path:
        try:
            return ImageFont.truetype(path, size)
        except OSError as error:
            raise ValueError(f"the grid font {path!r} (setting 'font') cannot be read: {error}") from error
    return ImageFont.load_default(size=size)


def wrap_text(draw: ImageDraw.ImageDraw, text: str, font, max_width: int) -> list[str]:
    """Break ``text`` into lines no wider than ``max_width`` at spaces (a single long word stays whole)."""
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and draw.textlength(candidate, font=font) > max_width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _line_height(font) -> int:
    left, top, right, bottom = font.getbbox("Ay")
    return bottom


def _block_height(count: int, line_height: int, spacing: int) -> int:
    return count * line_height + max(count - 1, 0) * spacing


def draw_grid_annotations(im: Image.Image, width: int, height: int, hor_texts: list[list[GridAnnotation]],
                          ver_texts: list[list[GridAnnotation]], margin: int = 0) -> Image.Image:
    """A copy of the grid ``im`` (cells of ``width`` x ``height``) with ``margin`` px between cells, column labels
    above (``hor_texts[col]``) and row labels on the left (``ver_texts[row]``)."""
    from modules.shared import opts

    cols, rows = im.width // width, im.height // height
    if len(hor_texts) != cols:
        raise ValueError(f"the grid has {cols} columns but {len(hor_texts)} column labels")
    if len(ver_texts) != rows:
        raise ValueError(f"the grid has {rows} rows but {len(ver_texts)} row labels")

    font_size = max((width + height) // 25, 8)
    spacing = font_size // 2
    font = get_font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    has_row_labels = any(a.text for labels in ver_texts for a in labels)
    pad_left = width * 3 // 4 if has_row_labels else 0
    line_height = _line_height(font)

    def layout(groups: list[list[GridAnnotation]], max_width: int) -> list[list[tuple[GridAnnotation, str]]]:
        return [[(a, line) for a in labels for line in wrap_text(measure, a.text, font, max_width)] for labels in groups]

    columns, row_labels = layout(hor_texts, width), layout(ver_texts, max(pad_left, 1))
    column_heights = [_block_height(len(lines), line_height, spacing) for lines in columns]
    has_column_labels = any(a.text for labels in hor_texts for a in labels)
    pad_top = max(column_heights) + spacing * 2 if has_column_labels else 0

    colours = opts.grid_text_active_color, opts.grid_text_inactive_color
    result = Image.new("RGB", (im.width + pad_left + margin * (cols - 1), im.height + pad_top + margin * (rows - 1)),
                       opts.grid_background_color)
    for row in range(rows):
        for col in range(cols):
            cell = im.crop((col * width, row * height, (col + 1) * width, (row + 1) * height))
            result.paste(cell, (pad_left + col * (width + margin), pad_top + row * (height + margin)))

    draw = ImageDraw.Draw(result)

    def draw_block(lines: list[tuple[GridAnnotation, str]], centre_x: float, top: float) -> None:
        for index, (annotation, line) in enumerate(lines):
            y = top + index * (line_height + spacing)
            colour = colours[0] if annotation.is_active else colours[1]
            draw.text((centre_x, y), line, font=font, fill=colour, anchor="ma")
            if not annotation.is_active and line:
                half = draw.textlength(line, font=font) / 2
                strike_y = y + line_height // 2
                draw.line((centre_x - half, strike_y, centre_x + half, strike_y), fill=colour,
                          width=max(font_size // 10, 1))

    for col, lines in enumerate(columns):
        draw_block(lines, pad_left + col * (width + margin) + width / 2, pad_top / 2 - column_heights[col] / 2)
    for row, lines in enumerate(row_labels):
        block = _block_height(len(lines), line_height, spacing)
        draw_block(lines, pad_left / 2, pad_top + row * (height + margin) + height / 2 - block / 2)
    return result


def draw_prompt_matrix(im: Image.Image, width: int, height: int, all_prompts: list[str], margin: int = 0) -> Image.Image:
    """Label a prompt-matrix grid: ``all_prompts[1:]`` are the optional parts; the first half label the columns,
    the rest the rows, each active where its bit is set in the cell's index."""
    parts = all_prompts[1:]
    boundary = math.ceil(len(parts) / 2)
    horizontal, vertical = parts[:boundary], parts[boundary:]

    def labels(texts: list[str]) -> list[list[GridAnnotation]]:
        return [[GridAnnotation(text, is_active=bool(position & (1 << i))) for i, text in enumerate(texts)]
                for position in range(1 << len(texts))]

    return draw_grid_annotations(im, width, height, labels(horizontal), labels(vertical), margin)
