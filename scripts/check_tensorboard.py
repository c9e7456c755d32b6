#!/usr/bin/env python3
"""Reads a meshtrain TensorBoard directory with TensorBoard's own reader and
checks it against what it must hold.

    python3 scripts/check_tensorboard.py crates/train/tests/golden/tensorboard \
        --expected crates/train/tests/golden/tensorboard/expected.json
    python3 scripts/check_tensorboard.py runs/smoke/tensorboard --metrics runs/smoke/metrics.jsonl

--expected: the scalars and texts read equal the JSON exactly
  ({"scalars": {tag: [[step, value], ...]}, "text": {tag: [[step, text], ...]}}).
--metrics: every number of every metrics.jsonl line, rounded to float32 (the
  precision TensorBoard keeps scalars in), is exactly the scalar
  train/<key> (train/<key>/<inner key> for objects) at the line's step, and
  no train/ tag has a step twice or a step metrics.jsonl lacks (eval/ tags
  are not compared).

Needs `pip install tensorboard`. Exits 1 on a mismatch.
"""

import argparse
import json
import sys

import numpy as np

from tensorboard.backend.event_processing import plugin_event_accumulator as pea
from tensorboard.util import tensor_util


def read(logdir):
    acc = pea.EventAccumulator(logdir, size_guidance={pea.TENSORS: 0})
    acc.Reload()
    scalars, text = {}, {}
    for tag in acc.Tags()["tensors"]:
        plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
        for e in acc.Tensors(tag):
            value = tensor_util.make_ndarray(e.tensor_proto).item()
            if plugin == "scalars":
                scalars.setdefault(tag, []).append([e.step, float(value)])
            elif plugin == "text":
                text.setdefault(tag, []).append([e.step, value.decode()])
            else:
                sys.exit(f"{tag}: unexpected plugin {plugin!r}")
    return {"scalars": scalars, "text": text}


def from_metrics(path):
    want = {}
    with open(path) as f:
        for line in f:
            v = json.loads(line)
            step = v.pop("step")
            for k, x in v.items():
                items = [(f"train/{k}/{s}", y) for s, y in x.items()] if isinstance(x, dict) else [(f"train/{k}", x)]
                for tag, y in items:
                    want.setdefault(tag, []).append([step, float(np.float32(y))])
    return want


def main():
    p = argparse.ArgumentParser()
    p.add_argument("logdir")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--expected")
    g.add_argument("--metrics")
    a = p.parse_args()
    got = read(a.logdir)
    if a.expected:
        with open(a.expected) as f:
            want = json.load(f)
        bad = got != want
    else:
        want = from_metrics(a.metrics)
        got = {t: v for t, v in got["scalars"].items() if t.startswith("train/")}
        bad = got != want
    if bad:
        for tag in sorted(set(got) | set(want)):
            if got.get(tag) != want.get(tag):
                print(f"{tag}: read {got.get(tag)}\n  expected {want.get(tag)}", file=sys.stderr)
        sys.exit(1)
    n = sum(len(v) for v in (got["scalars"] if a.expected else got).values())
    print(f"ok: TensorBoard read {n} scalar values from {a.logdir}, all as expected")


if __name__ == "__main__":
    main()
