#!/usr/bin/env python3
"""Writes real media for the media example (no network, no model): a PNG
social card and a folder of them, a one-page PDF, or a WAV "episode" of
tones. `make_media.py cards` or `make_media.py episode`; files go to
$FACTORY_OUTPUT_DIR. `make_media.py junk` writes text under a .png name,
which the factory refuses."""
import math
import os
import struct
import sys
import wave
import zlib

out = os.environ.get("FACTORY_OUTPUT_DIR", ".")
title = os.environ.get("FACTORY_PARAM_TITLE", "Process Factory")


def png(width, height, hue):
    def pixel(x, y):
        return bytes(((x * 255) // width, (y * 255) // height, hue))
    rows = b"".join(b"\x00" + b"".join(pixel(x, y) for x in range(width)) for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def pdf(text):
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        None,
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    stream = f"BT /F1 24 Tf 72 700 Td ({text}) Tj ET"
    objects[3] = f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream"
    body, offsets = "%PDF-1.4\n", []
    for n, obj in enumerate(objects, 1):
        offsets.append(len(body))
        body += f"{n} 0 obj\n{obj}\nendobj\n"
    xref = len(body)
    body += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n"
    body += "".join(f"{o:010d} 00000 n \n" for o in offsets)
    body += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    return body.encode("latin-1")


def episode(path, seconds, rate=8000):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = bytearray()
        for i in range(int(seconds * rate)):
            tone = 440 if (i // rate) % 2 == 0 else 660
            frames += struct.pack("<h", int(8000 * math.sin(2 * math.pi * tone * i / rate)))
        w.writeframes(bytes(frames))


what = sys.argv[1] if len(sys.argv) > 1 else "cards"
if what == "cards":
    with open(os.path.join(out, "card.png"), "wb") as f:
        f.write(png(240, 126, 160))
    os.makedirs(os.path.join(out, "cards"), exist_ok=True)
    for n, hue in enumerate((40, 200), 1):
        with open(os.path.join(out, "cards", f"card-{n}.png"), "wb") as f:
            f.write(png(120, 63, hue))
    with open(os.path.join(out, "cards", "index.md"), "w") as f:
        f.write(
            f"# {title}: social cards\n\n"
            "Two cards for the announcement, drawn as gradients so the example needs no fonts "
            "or network. Link previews usually want 1200 by 630 pixels; these samples are a "
            "tenth of that on each side.\n\n"
            "- card-1.png: the warm card, for the announcement on the first day.\n"
            "- card-2.png: the cool card, for the follow-up with the customer story.\n"
        )
    with open(os.path.join(out, "brief.pdf"), "wb") as f:
        f.write(pdf(title))
elif what == "episode":
    episode(os.path.join(out, "episode.wav"), 2.0)
elif what == "junk":
    with open(os.path.join(out, "card.png"), "w") as f:
        f.write("<html>an error page, not an image</html>")
else:
    sys.exit(f"make_media.py: unknown `{what}` (cards, episode or junk)")
