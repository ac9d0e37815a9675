"""Reading a run folder's log in the training tests (timing columns differ run to run)."""
import json
import os

TIMING = {"train_time_s", "samples_per_s", "images_per_s"}


def history(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
