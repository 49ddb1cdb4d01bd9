#!/usr/bin/env python3
"""Writes the English word list the rubric judge reads words against (src/judge/english.txt).

A word is English here when SGD's dialogues of at least MIN_SERVICES different services use it,
user or system turns alike: a vocabulary of how people talk about any task, not one domain's
names. Words are folded as tracelab folds them (lowercase, apostrophes dropped, other
punctuation a break) and keep letters only.

    python3 scripts/english_words.py ../shared/sgd > src/judge/english.txt
"""
import glob
import json
import os
import re
import sys

MIN_SERVICES = 2


def words(text):
    text = re.sub(r"['’`]", "", text.lower())
    return re.findall(r"[^\W\d_]+", text)


def main(sgd):
    seen = {}
    for path in sorted(glob.glob(os.path.join(sgd, "*", "dialogues_*.json"))):
        with open(path) as f:
            dialogues = json.load(f)
        for d in dialogues:
            services = d["services"]
            for turn in d["turns"]:
                for w in set(words(turn["utterance"])):
                    seen.setdefault(w, set()).update(services)
    english = sorted(w for w, s in seen.items() if len(s) >= MIN_SERVICES)
    sys.stdout.write("".join(w + "\n" for w in english))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/sgd")
