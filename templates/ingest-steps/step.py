#!/usr/bin/env python3
"""One step of templates/ingest-stream.json, over a batch of records.

The stream runner hands a batch as the upstream artifact (a JSON array of
{"key", "state", "attempt", "data"}); the step writes one result per record
to $FACTORY_OUTPUT_DIR/results.json: {"key": K, "data": {...}} to move it on
(the fields are merged into the record's data) or {"key": K, "error": "..."}.
Standard library only.
"""
import hashlib
import json
import math
import os
import re
import sys
from collections import Counter

DIMENSIONS = 64
STOP = set("a an and are as at be by for from has have in is it its of on or that the this to was were will with".split())


def words(text):
    return re.findall(r"[a-z0-9']+", text.lower())


def embedding(text):
    vector = [0.0] * DIMENSIONS
    for word in words(text):
        digest = hashlib.sha256(word.encode()).digest()
        index = int.from_bytes(digest[:4], "big") % DIMENSIONS
        vector[index] += 1.0 if digest[4] % 2 == 0 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [round(v / norm, 6) for v in vector]


def transcribe(data):
    if isinstance(data.get("text"), str) and data["text"].strip():
        return {"transcript": " ".join(data["text"].split())}
    if isinstance(data.get("path"), str):
        # Only files of the watched folder: a delivery may name any path.
        folder = os.path.realpath(watch_dir())
        path = os.path.realpath(data["path"])
        if os.path.commonpath([folder, path]) != folder:
            raise ValueError("`path` is outside the watched folder: not read")
        try:
            with open(path, encoding="utf-8") as f:
                text = " ".join(f.read().split())
        except OSError as error:
            raise ValueError(f"cannot read {data['path']}: {error.strerror}")
        if text:
            return {"transcript": text}
    raise ValueError("the item has no `text` and no readable `path`: nothing to transcribe")


def annotate(data):
    content = [w for w in words(data["transcript"]) if w not in STOP and len(w) > 2]
    tags = [w for w, _ in Counter(content).most_common(5)]
    return {"word_count": len(words(data["transcript"])), "tags": tags}


def embed(data):
    return {"embedding": embedding(data["transcript"])}


def score(data):
    params = json.loads(os.environ.get("FACTORY_PARAMS") or "{}")
    topic = embedding(params.get("topic", ""))
    cosine = sum(a * b for a, b in zip(topic, data["embedding"]))
    return {"score": round(max(0.0, cosine), 4)}


STEPS = {"transcribe": transcribe, "annotate": annotate, "embed": embed, "score": score}


def watch_dir():
    params = json.loads(os.environ.get("FACTORY_PARAMS") or "{}")
    folder = params.get("watch_dir") or "ingest-inbox"
    if not os.path.isabs(folder):
        folder = os.path.join(os.environ.get("FACTORY_TEMPLATE_DIR", "."), folder)
    return folder


def list_folder():
    """The watched folder's text files, one item each (the cron intake)."""
    folder = watch_dir()
    found = []
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.endswith(".txt") and os.path.isfile(path):
                found.append({"item_id": f"file:{name}", "path": os.path.abspath(path)})
    with open(os.path.join(os.environ["FACTORY_OUTPUT_DIR"], "found.json"), "w", encoding="utf-8") as f:
        json.dump(found, f)


def main():
    if sys.argv[1] == "list":
        list_folder()
        return
    step = STEPS[sys.argv[1]]
    with open(os.environ["FACTORY_INPUTS"], encoding="utf-8") as f:
        inputs = json.load(f)
    (path,) = inputs.values()
    with open(path, encoding="utf-8") as f:
        batch = json.load(f)
    results = []
    for record in batch:
        try:
            results.append({"key": record["key"], "data": step(record["data"])})
        except (ValueError, KeyError) as error:
            results.append({"key": record["key"], "error": str(error)})
    out = os.path.join(os.environ["FACTORY_OUTPUT_DIR"], "results.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
