#!/usr/bin/env python3
"""Regenerate the GENERATED junk artifacts of the audit calibration corpus.

Run from anywhere:  python3 crates/audit/tests/corpus/generate.py

Standard library only; every file uses its own fixed random seed, so two runs
give byte-identical output (and changing one generator does not shift the
others). The only input it reads is the golden example
templates/golden/frameworks.json, whose shape the two filler files copy.

Files this script writes (all under crates/audit/tests/corpus/):

  junk/base64-noise.md                   8,000 characters of base64 of random bytes
  junk/hex-dump.txt                      an xxd-style hex dump of random bytes
  junk/word-salad.md                     ~600 real English content words in random
                                         order, under Markdown headings and lists
  junk/repeated-paragraph.md             one plausible paragraph repeated 30 times
                                         under headings
  junk/lorem-ipsum.md                    a ~300-word lorem ipsum page with headings
  junk/filler-frameworks.json            the golden frameworks.json shape with every
                                         string replaced by filler ("N/A", "TBD", ...)
  junk/repeated-sentence-frameworks.json the golden frameworks.json shape with one
                                         sentence in every string

Every other file in the corpus (manifest.json, README.md, good/, weak/, the
remaining junk/ files) is hand-written and committed as is; this script never
touches them.
"""

import base64
import json
import os
import random
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN_FRAMEWORKS = os.path.join(HERE, "..", "..", "..", "..", "templates", "golden", "frameworks.json")


def write(rel, text):
    path = os.path.join(HERE, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def rand_bytes(rng, n):
    return bytes(rng.randrange(256) for _ in range(n))


# --- base64 noise -------------------------------------------------------------

def base64_noise():
    rng = random.Random(1001)
    encoded = base64.b64encode(rand_bytes(rng, 6000)).decode("ascii")
    assert len(encoded) == 8000
    lines = [encoded[i:i + 76] for i in range(0, len(encoded), 76)]
    write("junk/base64-noise.md", "\n".join(lines) + "\n")


# --- hex dump -----------------------------------------------------------------

def hex_dump():
    rng = random.Random(1002)
    # Starts like a gzip stream, then random bytes, as a dump of a binary blob would.
    data = bytes([0x1F, 0x8B, 0x08, 0x00, 0x5C, 0x3A, 0x61, 0x66, 0x00, 0x03]) + rand_bytes(rng, 1526)
    out = []
    for off in range(0, len(data), 16):
        chunk = data[off:off + 16]
        hexpart = " ".join(chunk[i:i + 2].hex() for i in range(0, len(chunk), 2))
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        out.append(f"{off:08x}: {hexpart:<39}  {text}")
    write("junk/hex-dump.txt", "\n".join(out) + "\n")


# --- word salad ---------------------------------------------------------------

CONTENT_WORDS = """
account acid active adjust advance agency agree aircraft album alert almond
ancient angle animal annual answer anxious apple approve april arch argue
armchair arrange arrow artist assemble atlas attic autumn average avocado
bacon badge bakery balance balcony bamboo banner barrel basket battery beacon
bearing bedroom belief bicycle billion biscuit blanket blossom border bottle
bracket branch breeze bridge brief bright broken bucket budget buffalo cabin
cable cactus calendar camera canal candle canvas capture carbon career carpet
castle catalog cattle ceiling cellar cement century ceramic chamber channel
chapter charge cheerful chimney circle citizen clarify climate clinic clover
coastal cobalt collect column comfort compass concrete confirm copper cotton
council cradle crater crimson crystal cushion custom dairy damp dancer dawn
debate decade define delta denim deposit desert detail diamond diesel digital
dinner distant doctor dolphin domain donate drift dusty eagle eastern eclipse
elbow elegant elevate ember empire enamel engine enrich envelope equal erode
estate evening exhibit expand export fabric falcon famous feather ferry fiber
fierce filter finance flannel flavor fleet flicker forest fossil fountain
fragile freight frozen funnel furnace gallery garden garlic gather gentle
glacier globe golden granite gravel grocery guitar habit hammer harbor harvest
helmet herbal highway hollow honey horizon hostile humble hunger ignite
import income infant inland insect invoice island ivory jacket jigsaw journal
jungle kettle kingdom kitchen ladder lantern laptop launch lavender ledger
legal lemon leopard liberty license lilac linen liquid lobster locker lumber
magnet mango marble margin market meadow medal melody mentor metal migrate
mineral mirror modest monitor mosaic motor mountain muffin museum napkin
narrow native needle nephew network noble nugget oatmeal ocean office olive
orbit orchard organic outdoor oxygen paddle palace panel paper parade pasture
patrol pebble pepper permit pigeon pillow pioneer planet plaster pocket
polish portrait powder predict prism profit pumpkin puzzle quarry quartz
quiet rabbit radar raft random rapid recipe reflect region remote repair
ribbon ripple river rocket rubber saddle salmon sample satellite scarlet
scatter school season secure segment select shallow shelter signal silver
sketch slender socket solar sparrow spinach splendid stable stadium steady
stencil stomach summit sunset survey sweater symbol tablet talent tavern
teapot temple tender terrace thunder ticket timber tissue tomato torch tower
tractor trigger trophy tundra tunnel turbine twilight umbrella uniform upload
urban useful valley velvet venture verify vessel village vintage violin
volcano voyage wagon walnut warden weather whisper widget window winter
wisdom wooden workshop yellow yogurt zebra zenith
""".split()

FUNCTION_WORDS = ["the", "of", "and", "with", "for"]


def salad_word(rng):
    if rng.random() < 0.06:
        return rng.choice(FUNCTION_WORDS)
    return rng.choice(CONTENT_WORDS)


def salad_sentence(rng, lo, hi):
    words = [salad_word(rng) for _ in range(rng.randint(lo, hi))]
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def word_salad():
    rng = random.Random(1003)
    parts = []
    total = 0
    title = " ".join(rng.choice(CONTENT_WORDS).capitalize() for _ in range(3))
    parts.append(f"# {title}\n")
    total += 3
    while total < 600:
        heading = " ".join(rng.choice(CONTENT_WORDS).capitalize() for _ in range(rng.randint(2, 4)))
        parts.append(f"## {heading}\n")
        total += len(heading.split())
        para = " ".join(salad_sentence(rng, 6, 14) for _ in range(rng.randint(3, 6)))
        parts.append(textwrap.fill(para, 80) + "\n")
        total += len(para.split())
        items = []
        for _ in range(rng.randint(3, 5)):
            words = [salad_word(rng) for _ in range(rng.randint(3, 7))]
            words[0] = words[0].capitalize()
            items.append("- " + " ".join(words))
            total += len(words)
        parts.append("\n".join(items) + "\n")
    write("junk/word-salad.md", "\n".join(parts))


# --- repeated paragraph -------------------------------------------------------

PARAGRAPH = (
    "Marisol Vega is a Chicago negotiation coach who spent eleven years as a "
    "federal labor mediator before founding Vega Table in 2016. Her method asks "
    "clients to price their walk-away first, say one anchored number with one "
    "reason, and hold seven seconds of silence before answering a counter."
)

HEADINGS = [
    "Overview", "Background", "Career", "Method", "Frameworks",
    "Offers", "Audience", "Content", "Reception", "Summary",
]


def repeated_paragraph():
    parts = ["# Intelligence Report: Marisol Vega\n"]
    for i in range(30):
        if i % 3 == 0:
            parts.append(f"## {HEADINGS[i // 3]}\n")
        parts.append(textwrap.fill(PARAGRAPH, 80) + "\n")
    write("junk/repeated-paragraph.md", "\n".join(parts))


# --- lorem ipsum --------------------------------------------------------------

LOREM_WORDS = """
lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor
incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud
exercitation ullamco laboris nisi aliquip ex ea commodo consequat duis aute
irure in reprehenderit voluptate velit esse cillum fugiat nulla pariatur
excepteur sint occaecat cupidatat non proident sunt culpa qui officia deserunt
mollit anim id est laborum curabitur pretium tincidunt lacus nulla gravida
orci a odio nullam varius turpis et commodo pharetra est eros bibendum elit
nec luctus magna felis sollicitudin mauris integer dui purus vulputate
""".split()


def lorem_sentence(rng):
    words = [rng.choice(LOREM_WORDS) for _ in range(rng.randint(7, 14))]
    if rng.random() < 0.3:
        words[rng.randint(2, len(words) - 2)] += ","
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def lorem_ipsum():
    rng = random.Random(1004)
    parts = ["# Lorem Ipsum Dolor\n"]
    first = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua."
    total = len(first.split())
    body = [first]
    headings = ["Consectetur Adipiscing", "Sed Do Eiusmod", "Ut Enim Ad Minim", "Duis Aute Irure"]
    section = 0
    while total < 300:
        sentence = lorem_sentence(rng)
        body.append(sentence)
        total += len(sentence.split())
        if len(body) >= 5 and section < len(headings):
            parts.append(textwrap.fill(" ".join(body), 80) + "\n")
            parts.append(f"## {headings[section]}\n")
            section += 1
            body = []
    if body:
        parts.append(textwrap.fill(" ".join(body), 80) + "\n")
    write("junk/lorem-ipsum.md", "\n".join(parts))


# --- filler-filled goldens ----------------------------------------------------

FILLERS = ["N/A", "TBD", "lorem ipsum", "string", "value", "example"]


def map_strings(node, fn):
    if isinstance(node, dict):
        return {k: map_strings(v, fn) for k, v in node.items()}
    if isinstance(node, list):
        return [map_strings(v, fn) for v in node]
    if isinstance(node, str):
        return fn(node)
    return node


def load_golden():
    with open(GOLDEN_FRAMEWORKS, encoding="utf-8") as f:
        return json.load(f)


def dump(rel, data):
    write(rel, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def filler_frameworks():
    rng = random.Random(1005)
    dump("junk/filler-frameworks.json", map_strings(load_golden(), lambda _s: rng.choice(FILLERS)))


SENTENCE = "This framework helps clients approach every negotiation with more clarity and confidence."


def repeated_sentence_frameworks():
    dump("junk/repeated-sentence-frameworks.json", map_strings(load_golden(), lambda _s: SENTENCE))


def main():
    base64_noise()
    hex_dump()
    word_salad()
    repeated_paragraph()
    lorem_ipsum()
    filler_frameworks()
    repeated_sentence_frameworks()


if __name__ == "__main__":
    main()
